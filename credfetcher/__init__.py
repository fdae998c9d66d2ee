"""credfetcher: gMSA Kerberos credentials for Linux containers.

A drop-in successor to aws/credentials-fetcher: a daemon that reads group Managed Service Account
passwords (MS-ADTS 3.1.1.4.4.1) from Active Directory and keeps Kerberos ticket caches fresh in
per-lease directories that containers bind-mount.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
