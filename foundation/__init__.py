"""The run machinery every other package stands on, and which imports none of them: devices and precision,
checkpoints, files written whole, run folders, ``torchrun``, signals, the loss meter, the training-loop skeleton
(:mod:`foundation.loop`), the config loader, the one user-facing error, the patient bootstrap and linear probes."""
