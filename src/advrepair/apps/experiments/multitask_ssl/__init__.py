"""Issue 5: the multi-task self-supervised repair ablation (lawhon, "multi-task SSL reversal")
on Fashion-MNIST.

lawhon repairs an input ``x'`` by minimizing a weighted sum of self-supervised losses
(Sec. 3.2),

    r = argmin_{||r||_inf <= eps_r}  L_m(x' + r),   L_m(x) = sum_k alpha_k L_k(x)

with three tasks: contrastive L_s (Sec. 3.2.1, mao2021's loss), inpainting L_i (Sec. 3.2.2,
Pathak et al.'s context encoder) and rotation L_r (Sec. 3.2.3, Gidaris et al.). Its Table 1
(200 CIFAR-10 images, a robust classifier, PGD at 8/255) reports 0.65 for the multi-task
repair against 0.62 for contrastive alone under PGD; its "future work" asks which tasks
help most when alpha_k varies. This module measures exactly that on the demo's two
Fashion-MNIST classifiers:

    rows     no repair; each task alone; each pair (weights 1); all three with
             alpha = (1, 1, 1) (the paper's text: "we use alpha_k = 1") and
             alpha = (1, 50, 10) for (contrastive, rotation, inpainting) (the paper's code)
    columns  {standard, PGD-trained classifier} x {clean, PGD-20}

Each combination is one ``ReverseAttack`` (eps_v = 0.2, K = 40, sign steps); attacks are
crafted on the undefended classifier (the paper's threat model, like mao2021 Table 1) and
every record goes into one resumable ``ResultsStore``. ``report.md`` holds the table
(accuracy ± binomial s.e.), the differences to "no repair" and to "contrastive alone"
with their paired standard errors and whether each exceeds 2 s.e., the premise check
from the heads' cards (does PGD raise each task's loss?), a bar figure and a clean-vs-PGD
trade-off figure. Optionally (on by default, small) the adaptive protocol
(``evaluation.adaptive.run_adaptive``) attacks the all-three repair on the PGD-trained
classifier; its defense-aware rows use ``L_c - lambda * sum_k alpha_k L_k`` through
``ReverseAttack.ssl_loss``.

Deviations from lawhon, on purpose:
- Data and models: Fashion-MNIST and the demo's small CNNs (``demo.DemoConfig`` recipes,
  reused from the same model folders), not CIFAR-10 with Carmon et al.'s network; eps =
  0.1 instead of 8/255. Heads are trained for the demo's 1 epoch (the paper: 200).
- Architectures: the contrastive head sits on the classifier's penultimate features
  (mao2021), the rotation net and the context encoder are small standalone CNNs on the
  image (see ``ssl.rotation`` / ``ssl.inpainting`` for their own deviations, e.g. the
  inpainting loss is a mean, not a sum, over the masked pixels). So alpha = (1, 50, 10)
  multiplies our losses' scales, which need not equal those of the paper's code.
- Contrastive augmentations have no horizontal flip (mao2021's list, which the repo
  follows), negatives come from a fixed bank of 256 clean training images.
- More images (600 by default, s.e. <= 2.04 points, vs the paper's 200, s.e. ~ 3) and a
  paired comparison: all rows see the same images and the same repair start, so the
  difference of two rows has the paired standard error sd(d_i) / sqrt(n) of the
  per-image differences d_i in {-1, 0, 1}; the unpaired bound sqrt(se_a^2 + se_b^2) is
  reported beside it.
- Resume granularity: each (classifier, combination) is its own ``evaluate_matrix`` call
  (PGD is recrafted per call; per-image seeding makes it identical), so an interrupted
  run loses at most one combination.

Example:
    >>> from advrepair.apps.experiments.multitask_ssl import MultiTaskConfig, run_multitask_ablation
    >>> report = run_multitask_ablation(MultiTaskConfig(out=Path("/tmp/runs/multitask")))
    >>> print(report.read_text())
"""
from advrepair.apps.experiments.multitask_ssl.config import (CLASSIFIERS, Combination, PAPER_CODE_WEIGHTS, PAPER_TEXT_WEIGHTS,
                                                             SHORT, MultiTaskConfig, check_combinations, combination_label,
                                                             combination_title, default_combinations, parse_combination)
from advrepair.evaluation.metrics import Difference, paired_difference
from advrepair.apps.experiments.multitask_ssl.run import run_multitask_ablation
from advrepair.apps.experiments.multitask_ssl.report import (ablation_table, claim_verdicts, difference_table,
                                                             write_multitask_report)

__all__ = ["CLASSIFIERS", "Combination", "Difference", "MultiTaskConfig", "PAPER_CODE_WEIGHTS", "PAPER_TEXT_WEIGHTS", "SHORT",
           "ablation_table", "check_combinations", "claim_verdicts", "combination_label", "combination_title",
           "default_combinations", "difference_table", "paired_difference", "parse_combination",
           "run_multitask_ablation", "write_multitask_report"]
