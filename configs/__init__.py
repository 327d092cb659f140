"""The YAML configurations shipped with the toolkit: each overrides the dataclass defaults in code for one
command (``classify-train.yaml``), its demo (``classify-train-demo.yaml``) or a preset
(``classify-train-cpu.yaml``). Installed as the package ``cxrgan_configs``; read them with
:func:`foundation.config.shipped_config`, never by a path relative to the source tree."""
