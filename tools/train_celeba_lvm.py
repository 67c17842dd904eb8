"""Recipe of the ``celeba_lvm`` zoo entry and its VAE baseline.

    python tools/train_celeba_lvm.py train [--kind lvm|vae] [--iterations N]   # resumes its run (runs_home)
    python tools/train_celeba_lvm.py export --epoch E                           # writes zoo/celeba_lvm
    python tools/train_celeba_lvm.py card                                       # renders both cards again
"""

from lvm_recipe import main

if __name__ == "__main__":
    main("celeba_lvm", __doc__)
