"""The pipeline's report page (page.py): each stage's section, as its kind names it."""
