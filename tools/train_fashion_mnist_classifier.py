"""Recipe of the ``fashion_mnist_classifier`` zoo entries (generative classifier and ConvNet baseline; 1,000 and 100
labels per class).

    python tools/train_fashion_mnist_classifier.py train --labels 1000 [--stage generator|head|joint|convnet|all]
    python tools/train_fashion_mnist_classifier.py train --labels 100
    python tools/train_fashion_mnist_classifier.py export       # after tools/eval_classifier.py and eval_robustness.py
    python tools/train_fashion_mnist_classifier.py cards        # the committed entries' cards and scores, no run needed
"""

from classifier_recipe import main

if __name__ == "__main__":
    main("fashion_mnist_classifier", __doc__)
