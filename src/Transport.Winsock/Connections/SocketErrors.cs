using System.Net.Sockets;

namespace Transport.Winsock.Connections;

/// <summary>Sorts socket errors the way Kestrel reports them: the peer reset, or the connection was ended locally.</summary>
internal static class SocketErrors
{
    /// <summary>The peer reset the connection (surfaces as ConnectionResetException).</summary>
    public static bool IsReset(SocketError error) => error is SocketError.ConnectionReset or SocketError.Shutdown
        // Windows reports a reset that arrives while a send is in flight as WSAECONNABORTED.
        || (error is SocketError.ConnectionAborted && OperatingSystem.IsWindows());

    /// <summary>This side closed the socket under a pending operation (surfaces as ConnectionAbortedException).</summary>
    public static bool IsLocalAbort(SocketError error) => error is SocketError.OperationAborted or SocketError.Interrupted
        // Unix reports an operation on a socket closed under it as EINVAL.
        || (error is SocketError.InvalidArgument && !OperatingSystem.IsWindows());
}
