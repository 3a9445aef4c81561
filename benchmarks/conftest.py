import sys
from pathlib import Path

# grad_sets.py sits beside the benchmarks.
sys.path.insert(0, str(Path(__file__).parent))
