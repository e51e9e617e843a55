"""Issue 6: the NRP experiment on Fashion-MNIST, tables shaped like naseer2020 Tables 1 and 5.

naseer2020 ("A Self-supervised Approach for Adversarial Robustness", CVPR 2020) trains a
purifier P by Algorithm 2 (Eq. 5-8) against its self-supervised perturbation SSP
(Algorithm 1, Eq. 1-4) on a feature extractor F, then deploys ``x -> T(P(x))`` in front of
an unseen target T. This module reproduces its evaluation on our own small networks:

- **Models** (train-or-reuse through cards, under ``cfg.models_dir``):
  the *target* T = the demo's standard SmallCNN recipe (folder ``fmnist-cnn-standard``, so a
  ``models_dir`` holding the demo's models reuses it); two independent *source* models for
  the transfer attacks, a SmallVGG (``small-vgg``, width 16) and a SmallCNN trained with
  another seed (``small-cnn-seed1``); and the *purifier* P trained by Algorithm 2 with SSP
  on F = the source SmallVGG at its middle layer ``body.8`` (the ReLU after the second
  conv stage, 32 x 14 x 14; the paper uses VGG-16 conv3.3, also a middle layer). F is never
  the target: T is unseen by P, as in the paper.
- **Table 1 shape** (paper: attack success rate of black-box attacks crafted on Inc-v3,
  Inc-v4, IncRes-v2, Res-v2-152 and their ensemble, against input-transform defenses and
  NRP): for each source (the two models and their logit-averaging ensemble), rows =
  defenses (none, JPEG q75, TV, median 3x3, bit depth 4, random resize-pad, NRP, NRP
  dynamic), columns = FGSM, MI-FGSM, DIM, DIM-TI crafted on the source, cells = target
  accuracy ± binomial s.e.; plus every defense's clean accuracy, its clean cost (paired
  difference to no defense) and the per-image worst case over all transfer attacks.
- **Table 5 shape** (paper: SSP's transferability against FGSM, R-FGSM, I-FGSM, MI-FGSM,
  TAP, DIM): rows = source x attack (FGSM, PGD, MI-FGSM, DIM, SSP), columns = the models the
  images are scored on (the target, and each source; ``*`` = white-box), no defense.
- **Adaptive protocol** (``evaluation.adaptive.run_adaptive``, ``DefenseUnderTest.build``)
  against NRP and NRP dynamic on the target, on a balanced subset (default 100 images,
  PGD-10): static transfer, BPDA, BPDA+EOT (dynamic only), the full gradient through P
  (P is differentiable, so this is the exact white-box attack), Square, per-image worst case.

Everything goes into one resumable ``ResultsStore`` under ``cfg.out``; ``report.md``
(+ ``table1.md``, ``table5.md``, ``nrp_accuracy_bars.png``, ``nrp_purified_examples.png``)
is rewritten from the stored records on every run.

Deviations from naseer2020, on purpose (also listed in the report):
- Data and scale: Fashion-MNIST 28 x 28 grayscale, small CNNs, a CPU budget. P is trained
  on Fashion-MNIST training images (the paper: 25k MS-COCO images, i.e. a different domain
  than the target's) for 1 epoch on a 6000-image random subset with width 16 (the paper's
  P is ESRGAN-sized and trained for much longer); see ``models.purifier`` for the
  architecture's own deviations (sigmoid output, small trunk).
- Optimizer: learning rate 1e-3 for P and C with batch 32 (the paper: 1e-4, batch 16), a
  larger step for a 188-step budget; we did not run the paper's 1e-4 for comparison. (A
  pilot with twice the images, 12000, moved clean accuracy through P from 83.7% to 85.7%
  on 300 images and left transfer accuracy unchanged.) The Eq. 8 weights are the paper's
  (alpha 5e-3, gamma 1e-2, lambda 1).
- Budget: eps = 0.1 (L-inf) for every attack and for SSP during training, the repository's
  Fashion-MNIST budget (the paper: 16/255 on ImageNet); iterative attacks take 10 steps
  (MI-FGSM / DIM / DIM-TI: alpha = eps / 10, decay 1 as in their papers; PGD and SSP:
  alpha = eps / 4 from a random start). DIM: resize rate 0.9, probability 0.5. DIM-TI: a
  5 x 5 Gaussian kernel (nsig 3) instead of 15 x 15, scaled down for 28-pixel images.
- SSP distance: mean absolute error for both training and the Table 5 attack (the paper
  computes Delta with MAE in Eq. 5 and leaves d open in Eq. 1).
- Reported numbers are *accuracies* of the target (higher is better), not attack success
  rates; Table 5 is top-1 only (Fashion-MNIST has 10 classes, top-5 says little).
- The transfer source of Table 1's "Ensemble" rows averages the two sources' logits (the
  paper's ensemble of four ImageNet models); the paper's FGSM_TI and MI-FGSM_TI columns
  are available as ``"fgsm-ti"`` and ``"mifgsm-ti"`` but not run by default.
- NRP dynamic follows the paper's reference code (noise sigma 0.05 projected to 16/255),
  per-image seeded (see ``defenses.purifier``).
- Sources' keys: the transfer records name each source by label and the first 12 hex
  digits of its weights' SHA-256, so retrained sources never reuse stale records.

Example:
    >>> from advrepair.apps.experiments.nrp import NRPConfig, run_nrp_experiment
    >>> report = run_nrp_experiment(NRPConfig(out=Path("/tmp/runs/nrp"), models_dir=Path("/tmp/runs/nrp-models")))
    >>> print(report.read_text())
"""
from advrepair.apps.experiments.nrp.config import (ATTACK_KINDS, DEFENSE_TITLES, ENSEMBLE, PURIFIER_DIR, PURIFIER_STEM,
                                                   SOURCE_CNN, SOURCE_TITLES, SOURCE_VGG, TARGET, NRPConfig, attack_params)
from advrepair.apps.experiments.nrp.models import LogitEnsemble, build_defenses, ensure_purifier, purifier_metrics
from advrepair.apps.experiments.nrp.run import run_nrp_experiment
from advrepair.apps.experiments.nrp.report import (accuracy_bars_figure, purified_examples_figure, paired_clean_cost,
                                                   table1_markdown, table5_markdown, worst_case_correct, write_nrp_report)

__all__ = ["ATTACK_KINDS", "DEFENSE_TITLES", "ENSEMBLE", "LogitEnsemble", "NRPConfig", "PURIFIER_DIR", "PURIFIER_STEM",
           "SOURCE_CNN", "SOURCE_TITLES", "SOURCE_VGG", "TARGET", "accuracy_bars_figure", "attack_params",
           "build_defenses", "ensure_purifier", "paired_clean_cost", "purified_examples_figure", "purifier_metrics",
           "run_nrp_experiment", "table1_markdown", "table5_markdown", "worst_case_correct", "write_nrp_report"]
