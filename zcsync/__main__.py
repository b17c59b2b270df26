"""python -m zcsync"""
from .cli import main

main()
