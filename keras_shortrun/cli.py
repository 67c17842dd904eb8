"""The ``keras-shortrun`` command: zoo listing, sampling, interpolation, reconstruction, training (EBM, LVM)."""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the CLI

import numpy as np

from keras_shortrun.errors import TrainingDiverged


def _print_table(rows, columns):
    """Prints ``rows`` (dicts) as aligned text; ``columns`` maps row keys to headers."""
    widths = [max(len(h), *(len(str(r.get(c, ""))) for r in rows)) for c, h in columns.items()]
    print("  ".join(h.ljust(w) for h, w in zip(columns.values(), widths)).rstrip())
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)).rstrip())


def cmd_zoo(args):
    from keras_shortrun import zoo

    if args.zoo_command == "list":
        rows = zoo.list(args.filter)
        for row in rows:
            row["metrics"] = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row["metrics"].items())
        _print_table(rows, {"name": "entry", "family": "family", "dataset": "dataset", "resolution": "resolution",
                            "params": "params", "steps": "K", "metrics": "metrics", "hardware": "training hardware"})
    else:
        print(json.dumps(zoo.info(args.name), indent=1, sort_keys=True))


def _load(name_or_path):
    """A zoo entry (name or folder) or a ``.keras`` file (e.g. written by ``train``)."""
    if str(name_or_path).endswith(".keras"):
        import keras

        import keras_shortrun.models  # noqa: F401  (registers the classes for deserialisation)

        if not Path(name_or_path).is_file():
            raise FileNotFoundError(f"No model file at {name_or_path}.")
        return keras.saving.load_model(name_or_path)
    from keras_shortrun import zoo

    return zoo.load(name_or_path)


def cmd_sample(args):
    from keras_shortrun.images import save_gif
    from keras_shortrun.images import save_grid

    model = _load(args.model)
    if hasattr(model, "synthesize"):  # latent models sample ancestrally: no chain to animate
        if args.gif:
            raise ValueError(f"{args.model} samples ancestrally (no Langevin chain from noise); drop --gif.")
        save_grid(args.output, model.synthesize(args.n, seed=args.seed), scale=args.scale)
        print(f"wrote {args.n} samples to {args.output}")
        return
    every = None if args.gif is None else max(1, (args.steps or model.chain.steps) // 25)
    out = model.sample(args.n, steps=args.steps, seed=args.seed, trajectory_every=every)
    samples = out if every is None else out[0]
    save_grid(args.output, samples, scale=args.scale)
    print(f"wrote {args.n} samples to {args.output}")
    if args.gif:
        save_gif(args.gif, out[1], scale=args.scale)
        print(f"wrote the chain ({out[1].shape[1]} frames) to {args.gif}")


def cmd_interpolate(args):
    from keras_shortrun.images import save_grid

    model = _load(args.model)
    if hasattr(model, "synthesize"):
        raise ValueError(f"{args.model} interpolates between images: use model.interpolate(x1, x2) in Python.")
    rows = [model.interpolate(n=args.n, seed=args.seed + 3 * i, steps=args.steps)[0] for i in range(args.rows)]
    save_grid(args.output, np.concatenate(rows), columns=args.n, scale=args.scale)
    print(f"wrote {args.rows} interpolation strips of {args.n} to {args.output}")


def cmd_reconstruct(args):
    from keras_shortrun import data
    from keras_shortrun.images import save_grid

    model = _load(args.model)
    x, _ = data.load(args.data, args.split, path=args.data_path)
    x = x[: args.n]
    if hasattr(model, "synthesize"):  # latent models: one pass of their inference
        x_hat, mse = model.reconstruct(x, seed=args.seed)
    else:
        x_hat, mse = model.reconstruct(x, iterations=args.iterations, seed=args.seed)
    print(f"reconstruction MSE over {len(x)} {args.data}/{args.split} images: {mse.mean():.5f} "
          f"(std {mse.std():.5f}; pixels in [-1, 1])")
    if args.output:
        pairs = np.stack([x[:32], x_hat[:32]], axis=1).reshape((-1,) + x.shape[1:])
        save_grid(args.output, pairs, columns=min(16, len(pairs)), scale=args.scale)
        print(f"wrote originals and reconstructions (alternating) to {args.output}")


def cmd_classify(args):
    from keras_shortrun import data

    model = _load(args.model)
    x, y = data.load(args.data, args.split, path=args.data_path)
    x, y = x[: args.n], y[: args.n]
    if y is None:
        raise ValueError(f"{args.data}/{args.split} has no labels to score against.")
    if hasattr(model, "predict_proba"):  # generative classifier: average over independent chains
        probabilities = model.predict_proba(x, chains=args.chains, seed=args.seed)
        how = f"{args.chains} chains per image"
    else:
        probabilities = model.predict(x, batch_size=256, verbose=0)
        how = "deterministic"
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y))
    print(f"accuracy on {len(x)} {args.data}/{args.split} images: {100 * accuracy:.2f} % ({how})")


def cmd_train(args):
    from keras_shortrun import data
    from keras_shortrun.training import fit_resumable

    x, _ = data.load(args.data, "train", path=args.data_path)
    if args.family == "ebm":
        from keras_shortrun.models import ShortRunEBM

        model = ShortRunEBM.with_convnet(
            image_size=x.shape[1], channels=x.shape[3], filters=args.filters, steps=args.steps,
            clip=None if args.no_clip else (-1.0, 1.0), seed=args.seed,
        )
        beta_1 = 0.9
    else:
        from keras_shortrun.models import MultiLayerLVM
        from keras_shortrun.models import TopDownGenerator
        from keras_shortrun.models import posterior_chain

        generator = TopDownGenerator(args.latent_dims, x.shape[1], x.shape[3], args.width, name="generator")
        model = MultiLayerLVM(
            generator, sigma=args.sigma, seed=args.seed, step_size_every=args.step_size_every,
            chain=posterior_chain(len(args.latent_dims), steps=args.steps, step_size=args.step_size, seed=args.seed),
        )
        beta_1 = 0.5
    fit_resumable(
        model, x, args.out, args.iterations, batch_size=args.batch_size,
        iterations_per_epoch=args.every, learning_rate=args.learning_rate, beta_1=beta_1, seed=args.seed,
    )
    model.save(Path(args.out) / "model.keras")
    print(f"saved {Path(args.out) / 'model.keras'}; checkpoints and sample grids are in {args.out}")


def cmd_serve_onnx(args):
    from keras_shortrun.serving import OnnxSampler

    sampler = OnnxSampler(args.path, providers=None if args.provider is None else [args.provider])
    sampler.save_grid(args.output, n=args.n, seed=args.seed, scale=args.scale)
    print(f"wrote {args.n} samples from {args.path} to {args.output} ({sampler.provider})")


def cmd_export(args):
    from keras_shortrun import export

    model = _load(args.model)
    options = {"graph": args.graph, "steps": args.steps, "noise": args.noise, "chains": args.chains}
    if args.format == "onnx":
        info = export.to_onnx(model, args.output, opset=args.opset or export.DEFAULT_OPSET, **options)
    else:
        info = export.to_saved_model(model, args.output, **options)
    names = ", ".join(t["name"] for t in info["inputs"]) + " -> " + ", ".join(t["name"] for t in info["outputs"])
    error = f", max |ONNX - Keras| {info['max_abs_error']:.2g}" if "max_abs_error" in info else ""
    print(f"wrote the {info['graph']} graph ({names}, K={info['steps']}) to {args.output}{error}")


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-shortrun", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    zoo_parser = sub.add_parser("zoo", help="list or describe pretrained entries")
    zoo_sub = zoo_parser.add_subparsers(dest="zoo_command", required=True)
    zoo_list = zoo_sub.add_parser("list", help="table of entries")
    zoo_list.add_argument("--filter", default=None, help="substring of name, family or dataset")
    zoo_info = zoo_sub.add_parser("info", help="metadata of one entry (JSON)")
    zoo_info.add_argument("name")
    zoo_parser.set_defaults(func=cmd_zoo)

    def add_model_args(p, n_default):
        p.add_argument("model", help="zoo entry name, entry folder or .keras file")
        p.add_argument("-n", type=int, default=n_default)
        p.add_argument("-o", "--output", default=None)
        p.add_argument("--steps", type=int, default=None, help="Langevin steps K (default: the model's)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNG")

    sample = sub.add_parser("sample", help="sample a grid into a PNG")
    add_model_args(sample, 64)
    sample.add_argument("--gif", default=None, help="also write the chain evolving from noise as a GIF")
    sample.set_defaults(func=cmd_sample, output="samples.png")

    interpolate = sub.add_parser("interpolate", help="interpolation strips between chain inputs")
    add_model_args(interpolate, 10)
    interpolate.add_argument("--rows", type=int, default=4)
    interpolate.set_defaults(func=cmd_interpolate, output="interpolation.png")

    reconstruct = sub.add_parser("reconstruct", help="reconstruct held-out images through the chain")
    add_model_args(reconstruct, 64)
    reconstruct.add_argument("--data", default="mnist")
    reconstruct.add_argument("--split", default="test")
    reconstruct.add_argument("--data-path", default=None)
    reconstruct.add_argument("--iterations", type=int, default=200)
    reconstruct.set_defaults(func=cmd_reconstruct)

    classify = sub.add_parser("classify", help="accuracy of a classifier entry on a labelled split")
    classify.add_argument("model", help="zoo entry name, entry folder, or .keras file")
    classify.add_argument("--data", default="mnist")
    classify.add_argument("--split", default="test")
    classify.add_argument("--data-path", default=None)
    classify.add_argument("-n", type=int, default=10000, help="first n images of the split")
    classify.add_argument("--chains", type=int, default=8, help="chains averaged per image (generative classifier)")
    classify.add_argument("--seed", type=int, default=0)
    classify.set_defaults(func=cmd_classify)

    serve = sub.add_parser("serve-onnx", help="sample a PNG grid from an exported ONNX sampler (onnxruntime only)")
    serve.add_argument("path", help="an .onnx sampler written by `keras-shortrun export` / export.to_onnx")
    serve.add_argument("-n", type=int, default=16)
    serve.add_argument("-o", "--output", default="grid.png")
    serve.add_argument("--seed", type=int, default=None)
    serve.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNG")
    serve.add_argument("--provider", default=None, help="onnxruntime execution provider (default: CUDA, else CPU)")
    serve.set_defaults(func=cmd_serve_onnx)

    export = sub.add_parser("export", help="write a fixed-step graph as ONNX or a TensorFlow SavedModel")
    export.add_argument("model", help="zoo entry name, entry folder or .keras file")
    export.add_argument("-o", "--output", required=True, help=".onnx file or SavedModel folder")
    export.add_argument("--format", choices=("onnx", "saved_model"), default="onnx")
    export.add_argument("--graph", default=None, help="sampler, chain, generator, inference, reconstruction, "
                                                      "classifier (default: the family's first)")
    export.add_argument("--steps", type=int, default=None, help="Langevin steps K (default: the model's)")
    export.add_argument("--noise", choices=("input", "internal"), default="input")
    export.add_argument("--chains", type=int, default=None, help="chains averaged by the classifier graph")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: keras_shortrun's, 17)")
    export.set_defaults(func=cmd_export)

    train = sub.add_parser("train", help="train a model (resumable)")
    train_sub = train.add_subparsers(dest="family", required=True)
    ebm = train_sub.add_parser("ebm", help="short-run EBM with the paper-1 ConvNet")
    lvm = train_sub.add_parser("lvm", help="multi-layer latent variable model with short-run inference")
    for p, steps, lr in ((ebm, 100, 1e-4), (lvm, 25, 8e-5)):
        p.add_argument("--data", default="mnist")
        p.add_argument("--data-path", default=None)
        p.add_argument("--out", required=True, help="run folder: checkpoints, grids, log; rerun to resume")
        p.add_argument("--steps", type=int, default=steps, help="Langevin steps K")
        p.add_argument("--iterations", type=int, default=10000)
        p.add_argument("--every", type=int, default=100, help="iterations between checkpoints and grids")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--learning-rate", type=float, default=lr)
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=cmd_train)
    ebm.add_argument("--filters", type=int, default=32)
    ebm.add_argument("--no-clip", action="store_true",
                     help="do not clamp the chain to [-1, 1] (paper 1's code does not; young EBMs may diverge)")
    lvm.add_argument("--latent-dims", type=int, nargs="+", default=[16, 32, 64], help="top layer first")
    lvm.add_argument("--width", type=int, default=64)
    lvm.add_argument("--sigma", type=float, default=0.15)
    lvm.add_argument("--step-size", type=float, default=0.05, help="initial step size of every layer")
    lvm.add_argument("--step-size-every", type=int, default=20, help="batches between step-size updates (0: fixed)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, TrainingDiverged) as error:
        print(f"keras-shortrun: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
