"""RIDE: Robust Iterative Data Estimation, a per-input self-supervised defense (Lin, Pfister &
Zhang, "White-Box Adversarial Defense via Self-Supervised Data Estimation").

For every input image x~ a small fully convolutional network h(.; w) is initialized at random
and fitted to that image alone (the paper's "functional" defender: w = omega(x~)); its output
is the estimate of the clean image. Four variants, as in the paper's ablation (Fig. 4, 5a):

``"dae"``  Algorithm 1 / Eq. 7. Each of K steps draws n pairs (s, z) ~ N(x~, sigma) x N(x~, sigma)
           and takes an Adam step on ``l_h(s, h(z; w))`` (mean squared error). The estimate is
           ``x_est = E_z[h(z; w)]``, z ~ N(x~, sigma), averaged over a mini-batch of samples.
``"ride"`` Algorithm 2 / Eq. 8-9 (the default). T checkpoints; checkpoint t runs the DAE for
           K steps towards x^(t-1) (weights and Adam state carried over), then
           ``x^(t) = alpha * x^(t-1) + (1 - alpha) * x_est^(t)``; returns x_est^(T).
``"dip"``  Deep image prior (Eq. 4): fixed random input z0, target x~, loss ``l_h(x~, h(z0; w))``;
           the estimate is h(z0; w).
``"idip"`` I-DIP: DIP with Algorithm 2's interpolation (the target is x^(t-1)).

"dae" and "dip" run the same T * K steps as their iterative versions with a fixed target
(alpha = 1, which the paper notes turns RIDE into DAE), so the variants compare at equal cost.

Paper defaults (Alg. 2 and the ablation section), all defaults here: sigma = 0.5, alpha = 0.9,
K = 2000 steps per checkpoint, T = 5 checkpoints, mini-batch n = 1, Adam with learning rate 1e-4
and (L2, not decoupled) weight decay 1e-4, MSE loss, dropout 0.5, no batch normalization,
uniform random initialization, a sigmoid after the output layer (images are in [0, 1]).
Networks (Table 3; 3x3 convolutions, padding 1, ReLU after every layer but the last):

- ``"mnist"``   C -> 16 -> 16 (dropout) -> 16 (dropout) -> C            (for 28 x 28 gray images)
- ``"cifar"``   C -> 32 -> 32 (dropout) -> 32 (dropout) -> 32 -> C      (for 32 x 32 color images)
- ``"imagenet"`` C -> 32 x 7 (dropout after layers 4, 5, 6) -> C
- ``"auto"`` (default): "mnist" for one channel, "cifar" otherwise.

Being fully convolutional they run on any image size; only the channel count is taken from the
images.

Batched engine. B images are fitted together, each with its OWN network: the B networks'
weights are stacked along the output-channel axis and run as one grouped convolution
(``groups=B``, channels-last), the loss is the sum of the per-image losses (so each network
receives exactly its own gradient), and Adam runs element-wise on the stacked tensors, which is
per-model Adam. ``RIDE.fit_sequential`` is the reference: one image at a time, an ordinary
``nn.Conv2d`` network and ``torch.optim.Adam``; given the same seed both paths draw the same
random numbers and agree to float rounding after a few steps (tested). Over thousands of steps
rounding differences grow (measured: 3e-4 max per pixel after 1000 steps at lr 1e-4), so the
two are the same algorithm, not bit-identical.

Native engine (``native_engine``). Where it covers the network (the "mnist" network: one image
channel, width 16, any depth; dropout 1/2 or none; float32 on CPU; a C compiler present) a C
kernel takes each network through its whole step, forward, backward and Adam, while its
activations stay in one core's cache; on even image sizes its hidden layers run as Winograd's
F(2x2, 3x3) (2.25x fewer multiplications). Same random numbers, so the same fit as the grouped
engine up to float rounding (tested); each network is computed alone, so estimates are
bit-identical in any batch and thread count without padding networks. Everything else, and
``ADVREPAIR_NATIVE_KERNELS=0``, runs the grouped engine below.

Bit-identical batch independence: oneDNN's grouped-convolution backward chooses its kernel, and
so its summation order, from the group count; a lone image and the same image in a batch of 3
then drift apart (1e-3 per pixel after 1000 steps). The engine therefore always runs a multiple
of ``GROUP_MULTIPLE`` = 8 networks, padding with inert all-zero networks; with that, an image's
estimate was bit-identical for every batch size, position, chunk size and thread count tried
on an AVX2 CPU (tested). The price: a lone image costs as much as eight.

Deviations and choices, each on purpose:

- Randomness per image: each image's initial weights, DIP input z0, DAE noise and dropout masks
  come, in a fixed order, from one generator seeded by the image's content and ``seed``
  (``advrepair.seeding.image_generators``). An image's estimate never depends on its
  batch-mates or the chunk size (see above); ``seed=None`` gives a truly random defense.
- Dropout: element-wise, p = 0.5, after the ReLU of the layers Table 3 marks; its masks are drawn
  from the per-image generator (not torch's global one): at p = 1/2 one random bit per unit (32
  per generator call; the same Bernoulli(1/2) as a compared uniform at a twentieth of the cost),
  at any other p one uniform per unit. The estimates x_est are computed with dropout off (eval
  mode); the paper does not say.
- Estimate: ``x_est = E_z[h(z; w)]`` is averaged over ``estimate_samples`` noisy inputs (default
  the mini-batch size n = 1, reading Alg. 1's "// mini-batch" literally).
- Weights *and* Adam's moments carry over between checkpoints (one optimizer for all T * K
  steps); Alg. 2 passes w^(t-1) on and is silent about the optimizer state.
- Initialization: "random uniform" made concrete as U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
  and biases (PyTorch's default range for convolutions).
- DIP input: z0 ~ U[0, 0.1) with the image's channel count (DIP's usual noise scale; the paper's
  Table 3 networks take C input planes). The DIP target is not noised.
- Noise is not clipped: s and z may leave [0, 1]; the output is in [0, 1] by the sigmoid.
- Gradient: the defense output is detached. omega (the fitting) is the part the paper argues an
  attacker cannot differentiate; evaluate RIDE white-box with ``advrepair.adaptive.BPDA``
  (the paper's Table 2 attack). Calling ``backward`` through RIDE itself raises torch's
  "does not require grad" error rather than returning a misleading zero gradient.
- Cost: the paper's defaults mean 10,000 Adam steps per image. On this project's 2-core CPU,
  28 x 28 images with the "mnist" network cost ~0.15 ms per image per step on the native engine
  (2 threads, chunks of 16; the VM's speed drifts; the grouped engine ~0.3-0.45 ms) against
  ~1.5-1.9 ms one by one, so ~1.5 s per image; pass
  ``iterations=`` (K) and ``checkpoints=`` (T) to trade quality for time.
  ``bench/ride_throughput.py`` measures it.

Example:
    >>> defense = RIDE(iterations=200, checkpoints=5, seed=0)
    >>> defended = nn.Sequential(defense, classifier)       # (B, 1, 28, 28) -> logits
    >>> result = defense.fit(x_adv, clean=x_clean, trajectory=True)
    >>> result.trajectory.to_clean.shape                    # (T * K + 1, B)
"""
from advrepair.defenses.ride.defense import RIDE
from advrepair.defenses.ride.networks import MODES, RIDE_NETWORKS, RideNetSpec, RideNetwork, resolve_network
from advrepair.defenses.ride.results import RideResult, RideTrajectory

__all__ = ["MODES", "RIDE", "RIDE_NETWORKS", "RideNetSpec", "RideNetwork", "RideResult", "RideTrajectory", "resolve_network"]
