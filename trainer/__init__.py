"""The bundled Poly-DPO trainer (docs/training.md).

`losses` (the objective's maths), `objectives` (noising and targets: epsilon / v / rectified flow),
`models` (denoiser, reference, frozen encoders per family), `data*` (pairs from shards or
Pick-a-Pic), `checkpoint` (resumable state), `loop` (`train(cfg)` on accelerate).
"""
