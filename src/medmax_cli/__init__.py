"""medmax-cli: curate, train and evaluate biomedical mixed-modal (Chameleon/Anole) assistants."""

__version__ = "0.1.0"
