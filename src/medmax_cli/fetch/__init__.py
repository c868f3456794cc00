"""Sources: PubMed Central (Europe PMC search + PMC Cloud), local JATS, local datasets."""
