"""Do the synthetic films help? The ablation experiment: classifiers trained with and without CycleGAN films,
and the statistics that judge the difference. It needs the CycleGAN, the classifier, the lung segmenter and the
data stage, so it sits above all of them; only ``cli.py`` (and the experiment scripts) import it.

- :mod:`ablation.seeds`: one held-out split, classifiers over seeds (``cli.py ablation``'s default);
- :mod:`ablation.stages`: the model work, built from the model packages.
"""
