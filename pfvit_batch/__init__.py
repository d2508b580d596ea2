"""``pfvit-batch``: the service's pipeline over folders of photos and videos, on Ray.

Detection, alignment and the emotion graphs run in Ray Data actors that each hold the
service's loaded models (``service.state.ServiceState``); rows are what ``/v1/recognize``
answers, one per face. Needs the ``ray`` extra and an ONNX Runtime extra (``cpu`` or ``gpu``).
"""
