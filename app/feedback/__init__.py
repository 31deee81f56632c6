"""Production feedback: recorded predictions and their delayed labels.

A production app predicts first and learns the truth later (the order ships, the loan is
repaid). ``/predict`` with ``"record": true`` stores each input with the version that
served it and its outputs (:meth:`FeedbackService.record`); ``POST /models/{name}/labels``
turns each ``(id, y)`` into a sample of the model's log — the recorded input with its
label — exactly as ``/update`` appends samples, and scores the output that was served
(the version's ``served`` metrics: River's delayed progressive validation, without a
second forward pass).
"""
