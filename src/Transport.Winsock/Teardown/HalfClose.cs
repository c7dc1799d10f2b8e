using System.Net.Sockets;
using Transport.Winsock.Interop;

namespace Transport.Winsock.Teardown;

/// <summary>The graceful end of a connection's send side: a FIN after every byte written, never an RST.</summary>
internal static class HalfClose
{
    /// <summary>
    /// Sends a FIN: WSASendDisconnect on Windows, shutdown(SHUT_WR) elsewhere. Returns the socket error;
    /// <see cref="SocketError.NotConnected"/> means the peer is already gone and there is nothing to close.
    /// </summary>
    public static SocketError SendFin(Socket socket)
    {
        try
        {
            if (OperatingSystem.IsWindows())
            {
                return WinsockNative.SendDisconnect(socket.SafeHandle);
            }

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
