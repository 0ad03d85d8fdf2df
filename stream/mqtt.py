"""`python -m stream.mqtt`: publish a run's events through an MQTT broker (the command
lives in stream.transport.mqtt: it needs pyzmq and paho-mqtt alone)."""

import sys

from stream.transport.mqtt import main

if __name__ == "__main__":
    sys.exit(main())
