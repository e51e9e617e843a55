"""Command line: parses arguments, then calls the library. Nothing else lives here."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from advrepair.errors import AdvRepairError


#: each top-level parser's ``eval`` subparser, whose flags a TOML run file may set
_EVAL_PARSERS: dict[int, argparse.ArgumentParser] = {}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``advrepair eval: error: ...`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _device(name: str) -> str:
    from advrepair.runtime import resolve_device

    return str(resolve_device(name))


EVAL_DEFENSES = ("none", "reverse-attack", "nrp", "ride", "jpeg", "tv", "median", "bit-depth", "resize-pad")


def _eval_defense(name: str) -> str:
    from advrepair.factories import is_factory_spec

    if name in EVAL_DEFENSES or is_factory_spec(name):
        return name
    raise argparse.ArgumentTypeError(f"invalid choice {name!r} (choose from {', '.join(EVAL_DEFENSES)}, or "
                                     "module:factory)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="dataset folder (Fashion-MNIST default: $ADVREPAIR_FASHION_MNIST or "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="advrepair", description="Test-time adversarial defenses, evaluated honestly.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="attack, repair and report on Fashion-MNIST with the zoo's CNNs (~13 min on 2 cores)")
    demo.add_argument("--out", type=Path, default=Path("reports/demo"))
    demo.add_argument("--n-images", type=int, default=500, help="test images (500: standard error <= 2.2 points)")
    demo.add_argument("--autoattack", action="store_true", help="add AutoAttack (standard) to the table; slow on CPU")
    demo.add_argument("--adaptive-images", type=int, default=100,
                      help="images for the adaptive protocol against the reverse attack (0 skips it)")
    _add_common(demo)

    train = sub.add_parser("train", help="train a classifier or a self-supervised head")
    tsub = train.add_subparsers(dest="what", required=True)
    clf = tsub.add_parser("classifier", help="standard or PGD adversarial training")
    clf.add_argument("--dataset", default="fashion-mnist")
    clf.add_argument("--arch", default="small-cnn", help="small-cnn, preact-resnet18 or wide-resnet")
    clf.add_argument("--out", type=Path, required=True, help="model directory (classifier.safetensors + .json)")
    clf.add_argument("--epochs", type=int, default=3)
    clf.add_argument("--batch-size", type=int, default=128)
    clf.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    clf.add_argument("--lr", type=float, default=1e-3)
    clf.add_argument("--weight-decay", type=float, default=0.0)
    clf.add_argument("--adversarial", action="store_true", help="PGD adversarial training (Madry et al.)")
    clf.add_argument("--eps", type=float, default=0.1)
    clf.add_argument("--alpha", type=float, default=0.025)
    clf.add_argument("--steps", type=int, default=7)
    clf.add_argument("--train-subset", type=int, default=None)
    _add_common(clf)
    ssl = tsub.add_parser("ssl", help="train a self-supervised head on a frozen classifier")
    ssl.add_argument("--model-dir", type=Path, required=True, help="directory holding classifier.safetensors")
    ssl.add_argument("--task", default="contrastive", choices=["contrastive", "rotation", "inpainting"])
    ssl.add_argument("--mask", default="center", choices=["center", "random"], help="inpainting mask (lawhon)")
    ssl.add_argument("--dataset", default="fashion-mnist")
    ssl.add_argument("--epochs", type=int, default=2)
    ssl.add_argument("--batch-size", type=int, default=128)
    ssl.add_argument("--lr", type=float, default=1e-3)
    ssl.add_argument("--tau", type=float, default=0.2)
    ssl.add_argument("--n-views", type=int, default=4)
    ssl.add_argument("--eps", type=float, default=0.1, help="budget of the PGD probe recorded in the card")
    ssl.add_argument("--train-subset", type=int, default=None)
    _add_common(ssl)

    pur = tsub.add_parser("purifier", help="NRP purifier by self-supervised adversarial training (naseer2020 Alg. 2)")
    pur.add_argument("--feature-model-dir", type=Path, required=True,
                     help="model directory whose classifier is the feature extractor SSP attacks")
    pur.add_argument("--layer", default=None, help="feature layer (a name from named_modules(); default: features())")
    pur.add_argument("--out", type=Path, required=True, help="directory for purifier.safetensors + .json")
    pur.add_argument("--dataset", default="fashion-mnist")
    pur.add_argument("--epochs", type=int, default=1)
    pur.add_argument("--batch-size", type=int, default=16)
    pur.add_argument("--lr", type=float, default=1e-4)
    pur.add_argument("--width", type=int, default=16)
    pur.add_argument("--ssp-eps", type=float, default=16 / 255)
    pur.add_argument("--ssp-steps", type=int, default=10)
    pur.add_argument("--train-subset", type=int, default=None)
    _add_common(pur)

    ev = sub.add_parser("eval", help="model x attack matrix, with and without the reverse attack")
    _EVAL_PARSERS[id(parser)] = ev
    ev.add_argument("--dataset", default="fashion-mnist")
    ev.add_argument("--model-dir", type=Path, action="append", required=True,
                    help="a model directory (repeatable); its name labels the rows")
    ev.add_argument("--attack", action="append", default=None,
                    help="name:key=value,... e.g. pgd:eps=0.1,alpha=0.0125,steps=20 (repeatable; 'clean' for none)")
    ev.add_argument("--transfer-from", type=Path, default=None,
                    help="craft every attack on this model directory's classifier instead (transfer attack)")
    ev.add_argument("--through", choices=["bpda", "full"], default=None,
                    help="also craft every attack through the defense: BPDA (identity gradient) or the "
                         "defense's own autograd graph (adaptive attacks)")
    ev.add_argument("--defense", type=_eval_defense, action="append", default=None,
                    help="a defense in front of the classifier (repeatable; default none): " + ", ".join(EVAL_DEFENSES)
                    + " (baselines: JPEG q75, TV split-Bregman with pixel dropout, 3x3 median, 4-bit depth, random "
                    "resize-and-pad), or your own module:factory (called with seed if it takes one)")
    ev.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="autocast precision of the classifier (bf16: CPU or CUDA; fp16: CUDA only)")
    ev.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="channels-last memory layout of the classifier's convolutions (default: on for "
                         "convolutional models: same predictions, ~2x faster on the CPU)")
    ev.add_argument("--purifier", type=Path, default=None, help="NRP purifier stem for --defense nrp")
    ev.add_argument("--ride-iterations", type=int, default=2000,
                    help="RIDE steps K per checkpoint (paper 2000, x T=5; ~5-30 s per image on a CPU)")
    ev.add_argument("--nrp-dynamic", action="store_true", help="NRP's dynamic inference (noise, project, purify)")
    ev.add_argument("--eps-v", type=float, default=None, help="reverse-attack budget (default 2x the first attack's eps)")
    ev.add_argument("--reverse-steps", type=int, default=40)
    ev.add_argument("--ssl-tasks", default="contrastive",
                    help="self-supervised tasks of the reverse attack with weights, e.g. "
                         "contrastive:1,rotation:50,inpainting:10 (lawhon multi-task repair; train each first)")
    ev.add_argument("--n-views", type=int, default=4)
    ev.add_argument("--n-images", type=int, default=500)
    ev.add_argument("--batch-size", type=int, default=250)
    ev.add_argument("--out", type=Path, required=True)
    ev.add_argument("--config", type=Path, default=None, metavar="RUN.toml",
                    help="read flags from a TOML file (keys are the flag names: n-images = 500, attack = [...]); "
                         "flags given on the command line override it, repeatable ones add to its lists")
    ev.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="shard the images over Ray workers (the attack matrix and, with --adaptive, the "
                         "protocol's rows): a local cluster, or ADDRESS ('auto', 'ray://host:port'); resumable "
                         "like a single-process run; needs pip install 'advrepair[ray]'")
    ev.add_argument("--ray-workers", type=int, default=2, help="workers (one per CPU slot or GPU)")
    ev.add_argument("--resume", action="store_true",
                    help="continue an interrupted run in --out (the default; state is saved after every batch)")
    ev.add_argument("--no-resume", action="store_true", help="start results.json afresh")
    ad = ev.add_argument_group("adaptive protocol (--adaptive): static, transfer, BPDA, BPDA+EOT, full gradient, "
                                "defense-aware lambda sweep, Square, per-image worst case, flags, cost")
    ad.add_argument("--adaptive", action="store_true", help="also run the adaptive protocol against the defense")
    ad.add_argument("--adaptive-eps", type=float, default=None, help="budget (default: the attacks' eps)")
    ad.add_argument("--adaptive-steps", type=int, default=20, help="PGD steps of every gradient row")
    ad.add_argument("--adaptive-alpha", type=float, default=None, help="PGD step size (default eps/4)")
    ad.add_argument("--eot-draws", type=int, default=4)
    ad.add_argument("--unroll-steps", type=int, default=5, help="defense steps differentiated by the full-gradient row")
    ad.add_argument("--surrogate", default="relative-tanh", choices=["relative-tanh", "tanh", "soft-sign"])
    ad.add_argument("--surrogate-temperature", type=float, default=1.0)
    ad.add_argument("--lambdas", default="0,1,4,16", help="lambda_s values of the defense-aware sweep")
    ad.add_argument("--square-queries", type=int, default=200)
    _add_common(ev)

    exp = sub.add_parser("experiment", help="reproduce a paper's evaluation on Fashion-MNIST (tables + figures)")
    esub = exp.add_subparsers(dest="which", required=True)
    mao = esub.add_parser("mao2021", help="the reverse attack whole: Tables 1 and 5, Figs. 3-8, lawhon, the audit")
    mao.add_argument("--out", type=Path, default=Path("reports/mao2021"))
    mao.add_argument("--quick", action="store_true", help="the same code on a few images with short schedules")
    mao.add_argument("--publish", type=Path, default=None,
                     help="also write the report here (e.g. docs/results/mao2021-fmnist.md), figures beside it")
    mao.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, cifar10, cifar100, svhn, ...")
    mao.add_argument("--classifiers", default=None,
                     help="comma-separated zoo names, model directories or module:factory "
                          "(default: fmnist-cnn-standard,fmnist-cnn-pgd)")
    mao.add_argument("--heads", default=None,
                     help="one contrastive head per classifier: zoo heads or model directories "
                          "(default: <zoo name>-contrastive, or the classifier's own directory)")
    mao.add_argument("--models-dir", type=Path, default=None, help="where the explanation grid trains its short models")
    mao.add_argument("--n-images", type=int, default=None, help="table images (default 1000; --quick 20)")
    mao.add_argument("--sweep-images", type=int, default=None, help="figure sweep images (default 500)")
    mao.add_argument("--audit-images", type=int, default=None, help="images of the audit (default 200; 0 skips it)")
    mao.add_argument("--standard-audit-images", type=int, default=None,
                     help="question (b) at the audit's standard preset, cascaded, on this many images (default 0)")
    mao.add_argument("--eps", type=float, default=0.1)
    mao.add_argument("--no-sweeps", action="store_true",
                     help="Tables 1 and 5 and the audits only (no figure sweeps, lawhon or explanation grid)")
    mao.add_argument("--no-lawhon", action="store_true", help="skip lawhon's multi-task repair")
    mao.add_argument("--no-explain", action="store_true", help="skip the base x head x eps_v grid")
    _add_common(mao)

    xiao = esub.add_parser("xiao2020", help="adversarial transformation: Table 1, training cost, Table 3, Figs. 2-7")
    xiao.add_argument("--out", type=Path, default=Path("reports/xiao2020"))
    xiao.add_argument("--models-dir", type=Path, default=None, help="default: $ADVREPAIR_HOME/xiao2020-models")
    xiao.add_argument("--n-images", type=int, default=200)
    xiao.add_argument("--eps", type=float, default=0.1)
    xiao.add_argument("--attack-steps", type=int, default=10)
    xiao.add_argument("--delta", type=float, default=0.2)
    xiao.add_argument("--g-steps", type=int, default=13)
    xiao.add_argument("--bpda-steps", default="1,4,13", help="N values of the BPDA sweep (Fig. 5)")
    xiao.add_argument("--eot-draws", default="1,2,8", help="EOT sample counts (Fig. 7)")
    xiao.add_argument("--deltas", default="0.1,0.2", help="Delta values (Fig. 6)")
    xiao.add_argument("--square-queries", type=int, default=100)
    xiao.add_argument("--paper-fig5", action="store_true", help="Fig. 5 without g's random start, as the paper")
    xiao.add_argument("--no-zoo", action="store_true",
                      help="train every model here instead of loading f_a, f_b and the baselines from the zoo")
    xiao.add_argument("--spsa-steps", type=int, default=10, help="SPSA (finite-difference) row: Adam steps")
    xiao.add_argument("--spsa-samples", type=int, default=64, help="SPSA row: random directions per step")
    _add_common(xiao)

    ride = esub.add_parser("ride", help="RIDE: Fig. 5a sweep, gray-box Table 1, BPDA Table 2, trajectories")
    ride.add_argument("--out", type=Path, default=Path("reports/ride"))
    ride.add_argument("--models-dir", type=Path, default=None, help="default: $ADVREPAIR_HOME/models (demo CNN)")
    ride.add_argument("--n-images", type=int, default=100)
    ride.add_argument("--whitebox-images", type=int, default=20)
    ride.add_argument("--val-images", type=int, default=50)
    ride.add_argument("--eps", type=float, default=0.1)
    ride.add_argument("--attack-steps", type=int, default=10)
    ride.add_argument("--sweep-iterations", default="100", help="K values of the Fig. 5a sweep")
    ride.add_argument("--sweep-checkpoints", type=int, default=5)
    ride.add_argument("--ride-lr", type=float, default=1e-4, help="paper 1e-4; 1e-3 suits CPU-sized step budgets")
    ride.add_argument("--paper-budget-images", type=int, default=0,
                      help="also defend this many gray-box images with RIDE at the paper's 2000 x 5 steps, lr 1e-4")
    ride.add_argument("--paper-budget-mode-images", type=int, default=0,
                      help="Fig. 5a's modes (DIP, I-DIP, DAE, RIDE) at the paper's budget on this many validation images")
    _add_common(ride)

    for name, help_text, default_n in (
            ("nrp", "NRP vs input transforms under transfer attacks (Tables 1 and 5), SSP's strength, adaptive rows", 500),
            ("multitask", "multi-task SSL repair ablation (lawhon): each task, pairs, all three; both classifiers", 600)):
        e = esub.add_parser(name, help=help_text)
        e.add_argument("--out", type=Path, default=Path(f"reports/{name}"))
        e.add_argument("--models-dir", type=Path, default=None, help="default: $ADVREPAIR_HOME/models (demo models)")
        e.add_argument("--n-images", type=int, default=default_n)
        e.add_argument("--eps", type=float, default=0.1)
        e.add_argument("--adaptive-images", type=int, default=100, help="images of the adaptive rows (0 skips them)")
        _add_common(e)

    zoo = sub.add_parser("zoo", help="the shipped model zoo: list entries, rebuild them from their recipes")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zlist = zsub.add_parser("list", help="every entry with its measured metrics")
    zlist.add_argument("--json", action="store_true", help="one JSON array (name, kind, dataset, parent, eps, metrics, ...)")
    zlist.add_argument("--markdown", action="store_true", help="the table of ZOO.md")
    zbuild = zsub.add_parser("build", help="retrain entries from their recipes and compare with the shipped cards")
    zbuild.add_argument("names", nargs="*", help="entry names (parents are built first when missing)")
    zbuild.add_argument("--all", action="store_true", help="every entry")
    zbuild.add_argument("--out", type=Path, default=None,
                        help="where the rebuilt files go (default: $ADVREPAIR_HOME/zoo-build)")
    zbuild.add_argument("--write-shipped", action="store_true",
                        help="write into the package's zoo/weights (maintainers: replaces the shipped files)")
    zbuild.add_argument("--no-autoattack", action="store_true",
                        help="measure clean and PGD-20 only (AutoAttack on 1,000 images takes ~15 min per robust CNN)")
    _add_common(zbuild)

    aud = sub.add_parser("audit", help="every adaptive attack against one defense in front of one classifier")
    aud.add_argument("--classifier", required=True,
                     help="a zoo classifier (e.g. fmnist-cnn-pgd), a model directory, or module:factory")
    aud.add_argument("--defense", required=True,
                     help="none, a baseline (jpeg, tv, median, bit-depth, resize-pad), a zoo head (the reverse "
                          "attack with it), or module:factory (called with classifier, eps, seed, device if it "
                          "asks for them)")
    aud.add_argument("--eps", type=float, required=True, help="the attack budget")
    aud.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    aud.add_argument("--preset", default="quick", choices=["quick", "standard", "thorough"])
    aud.add_argument("--dataset", default="fashion-mnist")
    aud.add_argument("--n-images", type=int, default=100, help="balanced test images")
    aud.add_argument("--eps-v", type=float, default=None, help="reverse-attack budget for a zoo head (2 eps)")
    aud.add_argument("--reverse-steps", type=int, default=40, help="reverse-attack steps K for a zoo head")
    aud.add_argument("--batch-size", type=int, default=100)
    aud.add_argument("--cascade", action="store_true",
                     help="after the static row, attack only the images every earlier row left correct: the same "
                          "worst case, cheaper when the defense breaks (per-row accuracies then cover those images)")
    aud.add_argument("--out", type=Path, default=Path("reports/audit"),
                     help="records (resumable), audit.json, audit.md and the figure")
    _add_common(aud)

    rep = sub.add_parser("report", help="rewrite report.md and figures from a results folder")
    rep.add_argument("out", type=Path)
    return parser


def config_argv(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    """The flags a TOML run file stands for, so both go through the same parser and checks."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        table = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise AdvRepairError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AdvRepairError(f"the config file {path} is not valid TOML: {exc}") from None
    known = {opt for action in parser._actions for opt in action.option_strings}
    argv: list[str] = []
    for key, value in table.items():
        flag = "--" + key.replace("_", "-")
        if flag not in known or flag in ("--config", "--help"):
            raise AdvRepairError(f"unknown key {key!r} in {path}; keys are the flag names of `advrepair eval`")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                if item:
                    argv.append(flag)
            elif isinstance(item, (str, int, float)):
                argv += [flag, str(item)]
            else:
                raise AdvRepairError(f"{key!r} in {path} must be a string, number, boolean or a list of them")
    return argv


def _with_config(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    if not argv or argv[0] != "eval" or "--config" not in argv[1:] and not any(a.startswith("--config=") for a in argv):
        return argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv[1:])
    return ["eval", *config_argv(known.config, _EVAL_PARSERS[id(parser)]), *argv[1:]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        full = _with_config(list(sys.argv[1:] if argv is None else argv), parser)
    except AdvRepairError as exc:
        print(f"advrepair: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    args = parser.parse_args(full)
    try:
        return _dispatch(args)
    except AdvRepairError as exc:
        print(f"advrepair: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user named cannot be read or written
        print(f"advrepair: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advrepair: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else None
    filename = getattr(exc, "filename", None)
    if text and filename:
        text = f"{filename}: {text}"
    return " ".join((text or str(exc) or type(exc).__name__).split())


def _dispatch(args: argparse.Namespace) -> int:
    from advrepair.apps import commands

    device = _device(getattr(args, "device", "cpu"))
    progress = not getattr(args, "no_progress", False)
    if args.command == "demo":
        commands.demo(out=args.out, data_root=args.data_root,
                      n_images=args.n_images, autoattack=args.autoattack, adaptive_images=args.adaptive_images,
                      seed=args.seed, device=device,
                      progress=progress)
    elif args.command == "train" and args.what == "classifier":
        from advrepair.training import ClassifierRecipe

        recipe = ClassifierRecipe(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                                  lr=args.lr, weight_decay=args.weight_decay, adversarial=args.adversarial,
                                  eps=args.eps, alpha=args.alpha, steps=args.steps, train_subset=args.train_subset)
        commands.train_classifier(dataset=args.dataset, data_root=args.data_root, arch=args.arch,
                                  model_dir=args.out, recipe=recipe, eval_eps=args.eps, seed=args.seed,
                                  device=device, progress=progress)
    elif args.command == "train" and args.what == "ssl":
        from advrepair.training import SSLRecipe

        ssl_recipe = SSLRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               train_subset=args.train_subset)
        commands.train_ssl(dataset=args.dataset, data_root=args.data_root, model_dir=args.model_dir,
                           recipe=ssl_recipe, tau=args.tau, n_views=args.n_views, eval_eps=args.eps,
                           seed=args.seed, device=device, progress=progress, task=args.task, mask=args.mask)
    elif args.command == "train" and args.what == "purifier":
        from advrepair.training import PurifierRecipe

        purifier_recipe = PurifierRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                         ssp_eps=args.ssp_eps, ssp_alpha=args.ssp_eps / 8, ssp_steps=args.ssp_steps,
                                         layer=args.layer, train_subset=args.train_subset, seed=args.seed)
        commands.train_purifier(dataset=args.dataset, data_root=args.data_root,
                                feature_model_dir=args.feature_model_dir, layer=args.layer, out=args.out,
                                recipe=purifier_recipe, width=args.width, seed=args.seed, device=device, progress=progress)
    elif args.command == "eval":
        adaptive = None
        if args.adaptive:
            try:
                lambdas = tuple(float(v) for v in args.lambdas.split(",") if v.strip())
            except ValueError:
                raise AdvRepairError(f"--lambdas must be comma-separated numbers, got {args.lambdas!r}") from None
            adaptive = dict(eps=args.adaptive_eps, steps=args.adaptive_steps, alpha=args.adaptive_alpha,
                            eot_draws=args.eot_draws, unroll_steps=args.unroll_steps, surrogate=args.surrogate,
                            surrogate_temperature=args.surrogate_temperature, lambdas=lambdas,
                            square_queries=args.square_queries, seed=args.seed)
        request = commands.EvalRequest(
            dataset=args.dataset, data_root=args.data_root, model_dirs=tuple(args.model_dir or ()),
            attack_specs=tuple(args.attack or ["clean", "fgsm:eps=0.1", "pgd:eps=0.1,alpha=0.0125,steps=20"]),
            defenses=tuple(args.defense or ["none"]), eps_v=args.eps_v, reverse_steps=args.reverse_steps,
            n_views=args.n_views, n_images=args.n_images, batch_size=args.batch_size, out=args.out,
            resume=not args.no_resume, seed=args.seed, device=device, progress=progress,
            transfer_from=args.transfer_from, through=args.through, adaptive=adaptive, ssl_tasks=args.ssl_tasks,
            ray=args.ray, ray_workers=args.ray_workers, purifier=args.purifier, nrp_dynamic=args.nrp_dynamic,
            precision=args.precision, channels_last=args.channels_last, ride_iterations=args.ride_iterations)
        commands.evaluate(request)
    elif args.command == "experiment":
        options = {k: v for k, v in vars(args).items() if k not in ("command", "which", "device", "no_progress")}
        print(commands.experiment(args.which, options, device=device, progress=progress))
    elif args.command == "zoo" and args.zoo_command == "list":
        print(commands.zoo_list(as_json=args.json, as_markdown=args.markdown), end="" if args.markdown else "\n")
    elif args.command == "zoo" and args.zoo_command == "build":
        ok = commands.zoo_build(names=args.names, all_entries=args.all, out=args.out,
                                write_shipped=args.write_shipped, autoattack=not args.no_autoattack,
                                data_root=args.data_root, device=device, progress=progress)
        return 0 if ok else 1
    elif args.command == "audit":
        commands.audit(classifier=args.classifier, defense=args.defense, eps=args.eps, norm=args.norm,
                       preset=args.preset, dataset=args.dataset, data_root=args.data_root, n_images=args.n_images,
                       eps_v=args.eps_v, reverse_steps=args.reverse_steps, batch_size=args.batch_size, out=args.out,
                       seed=args.seed, device=device, progress=progress, cascade=args.cascade)
    elif args.command == "report":
        print(commands.report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
