"""The browser view of a run: `stream.run --web 127.0.0.1:8080`, or `python -m stream.web
--connect tcp://HOST:5555` for a run elsewhere.

server.py is the aiohttp app (pages, JSON, MJPEG video, the WebSocket), feed.py its ZeroMQ
subscriber, auth.py the options checked before it starts (the listen address, the token,
the video's rate and width), assets/ the page itself (plain JavaScript, nothing fetched
from elsewhere). Only aiohttp, pyzmq and the standard library
here (frames.py, which reads the rings inside stream.run, is the exception): the view of a
run on another host needs `pip install 'avstream[web]'` and nothing of the pipeline.
"""
