"""Prints a + b + c: the command the seed example's bash app runs."""

import argparse

parser = argparse.ArgumentParser()
parser.add_argument("-a", type=int, required=True)
parser.add_argument("-b", type=int, required=True)
parser.add_argument("-c", type=int, required=True)
args = parser.parse_args()
print(args.a + args.b + args.c)
