"""Run settings that train the tiny model in seconds (shared by the training tests and their spawned ranks)."""

# 8 training images of one size (128x96): with batch 2, 4 iterations per epoch.
TINY_RUN = dict(
    imgsz=64, max_size=96, batch=2, workers=0, warmup_iters=2, optimizer="adamw", lr0=0.004, weight_decay=0.05,
    val=False, deterministic=True, exist_ok=True, verbose=False,
)  # fmt: skip
