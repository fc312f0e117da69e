"""`python -m benchmarks [--quick] [--only NAME...]`: run the benchmark harness."""

from benchmarks.main import main

raise SystemExit(main())
