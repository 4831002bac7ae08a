"""Models and what runs them: build/load, the three views, the live KV cache, the decode loop, capture.

    model    build / load / save HF checkpoints, Memento-token initialisation, weights' SHA-256
    views    HF module, TransformerLens bridge, nnsight: every model-view dispatch lives here
    hooks    TransformerLens hook names
    cache    KV surgery on HF caches by logical position
    decode   the one decode loop (`Decoder.run`) and its policies
    capture  activations at named sites from one memento-masked forward
"""
