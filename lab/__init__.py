"""The transport lab (/lab/): one message sent four ways, to show what reaches a socket on
another replica and what does not."""
