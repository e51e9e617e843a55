"""The RIDE experiment on Fashion-MNIST: Fig. 5a (accuracy vs iterations), Table 1 (gray-box),
Table 2 (white-box BPDA-identity) and the distance trajectories of Figs. 2e / 6.

Lin, Pfister & Zhang, "White-Box Adversarial Defense via Self-Supervised Data Estimation" (RIDE)
fits one small network per input (:class:`advrepair.defenses.ride.RIDE`, Algorithm 2 /
Eqs. 7-9). :func:`run_ride_experiment` reproduces the *shape* of the paper's evaluation in one
resumable run on a standard classifier:

- **Fig. 5a**: accuracy of ``f(RIDE(x_adv))`` against the number of Adam steps on a small,
  class-balanced *validation* set (test images disjoint from the evaluation images), for FGSM
  and PGD images crafted on the classifier. One fit with ``T = sweep_checkpoints`` checkpoints
  per K in ``sweep_iterations`` gives the accuracy after ``t * K`` steps for every t (RIDE with
  ``t`` checkpoints returns exactly the ``t``-th checkpoint estimate of a longer run: the
  random draws come in the same order). The best validation accuracy (mean over the attacks;
  ties: fewer steps) fixes the deployed ``(K, T)`` -- "the chosen stop".
- **Table 1** (gray-box): clean, FGSM and PGD-``attack_steps`` (L-inf ``eps``) crafted on the
  undefended classifier; defenses none, median 3x3, total variation (Chambolle, weight 0.1)
  and RIDE at the chosen stop, on ``n_images`` class-balanced test images.
- **Table 2** (white-box): PGD through ``BPDA(defense)`` (identity backward, the paper's BPDA
  attacker) on ``whitebox_images`` of them, next to the static (gray-box) PGD on the same images.
- **Figs. 2e / 6**: the mean L2 distance of the estimate to the clean and to the adversarial
  image against the step, from the sweep's fits.

Every accuracy is a record of :class:`advrepair.evaluation.store.ResultsStore` in ``cfg.out``
(skipped on a rerun; the gray-box and white-box cells go through
:func:`advrepair.evaluation.harness.evaluate_matrix`, which also resumes inside a cell), the
classifier comes from :func:`advrepair.apps.pipeline.ensure_classifier` (the demo's standard CNN
recipe, reused from ``models_dir/classifier_name`` when its card matches), and
:func:`write_ride_report` writes ``report.md`` and the PNGs from the store alone.

Deviations from the paper, on purpose:
- Dataset and classifier: Fashion-MNIST and our SmallCNN (the demo's standard recipe); the
  paper uses MNIST / CIFAR-10 / ImageNet (Table 1 is ImageNet with ResNet-50).
- Cost: the paper runs T = 5 checkpoints of K = 2000 steps (10,000 Adam steps per image). On a
  2-core CPU that is 5-30 s per image, so the defaults here are K = 100, T = 5 (500 steps) and
  the stop is chosen on the validation sweep; ``ride_lr`` may be raised above the paper's
  1e-4 to make up for fewer steps (recorded in every RIDE record's parameters).
- Baselines: one median kernel (3x3) and one TV setting (Chambolle, weight 0.1); the paper
  reports the best over kernel sizes 3-11 and weights for both TV solvers (its Tables 4-6),
  i.e. tuned on the test set, which we do not do.
- Attacks: eps = 0.1 (the usual Fashion-MNIST budget), PGD with ``attack_steps`` (10) steps
  of ``2.5 eps / steps`` and a seeded random start; FGSM single step. The BPDA attacker is
  PGD-``attack_steps`` with the identity backward (the paper: BPDA around PGD, 10 iterations
  in its Fig. 7 analysis), on fewer images because each attack step refits RIDE.
- The stop is chosen on validation images from the test split disjoint from the evaluation
  images; the paper reads its stop off Fig. 5a without saying on which images.

Example:
    >>> cfg = RideConfig(out=Path("/tmp/runs/ride"), n_images=100, whitebox_images=20)
    >>> report = run_ride_experiment(cfg)       # -> /tmp/runs/ride/report.md
"""
from advrepair.apps.experiments.ride.config import DEFENSE_ORDER, PROTOCOL, TRAJECTORY_POINTS, RideConfig, split_validation
from advrepair.apps.experiments.ride.run import choose_stop, run_ride_experiment
from advrepair.apps.experiments.ride.report import write_ride_report

__all__ = ["DEFENSE_ORDER", "PROTOCOL", "RideConfig", "TRAJECTORY_POINTS", "choose_stop", "run_ride_experiment",
           "split_validation", "write_ride_report"]
