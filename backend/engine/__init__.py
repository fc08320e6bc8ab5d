"""The engine: sessions as KDA state slots plus paged latent cache, forked at any token and decoded together."""
