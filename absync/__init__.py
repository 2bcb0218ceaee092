"""absync's composition root: the command line and the service runner.

The only package that imports all the others (streams, schemas, processors, connectors, projections).
"""
