"""Perception training and evaluation on generated drives: GT targets (labels), per-drive sample caches (cache,
data), batches with augmentation and modality dropout (batches), the resumable training loop (train), metrics
and `edge eval perception` (metrics, evaluate), and the CLI glue (cli). See docs/perception.md."""
