"""Benchmarks of absync (issue [H]): scripts that print figures and ratios, never assert on time.

Each script prints result rows ``name | figure | unit | baseline | ratio``
(:func:`bench.common.print_rows`); ``python -m bench.run_all`` runs them all and prints one table
against the targets of issue [H].
"""
