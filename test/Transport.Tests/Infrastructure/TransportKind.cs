namespace Transport.Tests.Infrastructure;

/// <summary>Which transport a test host runs on: ours, or Kestrel's own Sockets transport as the reference.</summary>
public enum TransportKind
{
    Winsock,
    Sockets,
}
