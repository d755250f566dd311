"""Evaluation entry point (rollouts in simulation). Not implemented yet: it lands with the evaluation issue."""

import sys

if __name__ == "__main__":
    sys.exit("eval.py: evaluation is not implemented yet; see README.md 'Status'.")
