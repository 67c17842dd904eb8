"""Recipe of the ``mnist_lvm`` zoo entry and its VAE baseline.

    python tools/train_mnist_lvm.py train [--kind lvm|vae] [--iterations N]   # resumes its run (runs_home)
    python tools/train_mnist_lvm.py export --epoch E                           # writes zoo/mnist_lvm
    python tools/train_mnist_lvm.py card                                       # renders both cards again
"""

from lvm_recipe import main

if __name__ == "__main__":
    main("mnist_lvm", __doc__)
