"""python -m colorize_batch"""

from .cli import main

main()
