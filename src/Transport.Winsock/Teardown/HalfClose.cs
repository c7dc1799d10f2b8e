using System.Net.Sockets;
using Transport.Winsock.Interop;

namespace Transport.Winsock.Teardown;

/// <summary>The graceful end of a connection's send side: a FIN after every byte written, never an RST.</summary>
internal static class HalfClose
{
    /// <summary>
    /// Sends a FIN with <see cref="Socket.Shutdown"/>: shutdown(SD_SEND) on Windows, which is
    /// WSASendDisconnect without disconnect data (Winsock's TCP has none), and shutdown(SHUT_WR) elsewhere.
    /// <see cref="WinsockErrorAction.NotConnected"/> means the peer is already gone and there is nothing to close.
    /// </summary>
    /// <remarks>
    /// Not a P/Invoke of WSASendDisconnect, although the wire sees the same FIN: .NET must see the
    /// shutdown. Its SafeSocketHandle turns a close that cancels operations into an abortive one (an RST)
    /// unless it has recorded a shutdown of the send side, and only <see cref="Socket.Shutdown"/> records
    /// it. Graceful paths do close under a pending operation: the drain timeout closes while the receive
    /// waits for the peer's FIN, the disconnect timeout while DisconnectEx waits. On Unix every such close
    /// cancels the pending operation; on Windows one that races a socket call still in progress on another
    /// thread does. The price on Windows: <see cref="Socket.Shutdown"/> also calls ioctlsocket(FIONBIO),
    /// one system call more per FIN than the P/Invoke.
    /// </remarks>
    public static WinsockErrorAction SendFin(Socket socket) => WinsockErrors.Classify(TrySendFin(socket));

    private static SocketError TrySendFin(Socket socket)
    {
        try
        {
            socket.Shutdown(SocketShutdown.Send);
            return SocketError.Success;
        }
        catch (SocketException ex)
        {
            return ex.SocketErrorCode;
        }
        catch (ObjectDisposedException)
        {
            return SocketError.OperationAborted;
        }
    }
}
