"""One module per ``absync`` sub-command."""
