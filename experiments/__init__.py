"""The launches (absl programs that parse flags and compose library calls).

This folder sits at the top of the repository, so ``python -m experiments.<launch>`` runs
from a clone; the wheel installs it as ``nca_adv.experiments`` (no second top-level
package), with the command ``nca-adv <launch>`` (``__main__.py``). Imports between the
launches are relative (``from . import common``) so that both names work; nothing in
``nca_adv`` imports this package.
"""
