"""Data quality control: five-dimension scoring (rules or a judge model), filtering and a review report."""
