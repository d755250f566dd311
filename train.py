"""Training entry point (Lightning). Not implemented yet: it lands with the training issue."""

import sys

if __name__ == "__main__":
    sys.exit("train.py: training is not implemented yet; see README.md 'Status'.")
