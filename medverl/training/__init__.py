"""Training front-ends on verl: the CPT dataset class."""
