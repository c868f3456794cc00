"""`medmax report`: a static HTML page of a whole run (curation, gallery, training, evaluation)."""
