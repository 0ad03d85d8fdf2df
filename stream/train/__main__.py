"""`python -m stream.train`: fine-tune a model on recorded clips (stream.train.trainer)."""

import sys

from stream.train.trainer import main

sys.exit(main())
