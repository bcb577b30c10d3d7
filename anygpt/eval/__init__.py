"""Evaluation of nano models: judges that are trained or built apart from the models they measure."""
