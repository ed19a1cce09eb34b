"""Training of the bi-layer model (paper Sec. 3.2-3.5, App. A.1).

config.py       TrainConfig (typed YAML + overrides)      loop.py     Trainer: stages, steps, resume
phases.py       one nn.Module per phase (DDP-wrappable)   data.py     resumable sharded data stream
perceptual.py   the configured perceptual networks        stats.py    standing BatchNorm statistics
distributed.py  torchrun process-group helpers            log.py      TensorBoard + JSON lines
state.py        RNG states for checkpoints
"""
