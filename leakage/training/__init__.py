"""Training and scoring Memento models on synthetic tasks.

    tasks     tasks as data (`TaskSpec`), examples, scored units, passcode splits
    evaluate  task accuracy under eviction decoding (teacher-forced and free-running)
    train     two-stage SFT on `transformers.Trainer`, run folders, `ensure_trained`
    rollout   sampled rollouts through the decoder, rewards, maj@k
    rl        CISPO on TRL's GRPOTrainer with block-masked rollouts
"""
