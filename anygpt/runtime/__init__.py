"""The runtime shared by every front end: requests, the engine, chat sessions, media and sinks."""
