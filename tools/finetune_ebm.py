"""Fine-tune a zoo entry on new data and save it as a new entry folder (the documented example).

    python tools/finetune_ebm.py mnist_ebm --data fashion_mnist --iterations 100 --out runs/mnist_ebm_to_fashion
    keras-shortrun sample runs/mnist_ebm_to_fashion -n 64 -o tuned.png

Loads ``zoo.load(entry)``, runs ``model.fit`` on the training split of ``--data`` with a lower learning rate
(default 1e-5, a tenth of training from scratch), and writes a folder ``zoo.load(out)`` reads back.
"""

import argparse

from keras_shortrun import data
from keras_shortrun.training import fine_tune

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entry")
    parser.add_argument("--data", required=True, help="dataset name (keras_shortrun.data.DATASETS)")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--out", required=True, help="new entry folder")
    args = parser.parse_args()
    x, _ = data.load(args.data, "train", path=args.data_path)
    _, directory = fine_tune(args.entry, x, args.out, iterations=args.iterations, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, dataset=args.data, verbose=1)
    print(f"wrote {directory}")
