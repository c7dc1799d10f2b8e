using System.Net.Sockets;
using Transport.Winsock.Interop;

namespace Transport.Winsock.Teardown;

/// <summary>The graceful end of a connection's send side: a FIN after every byte written, never an RST.</summary>
internal static class HalfClose
{
    /// <summary>
    /// Sends a FIN: WSASendDisconnect on Windows, shutdown(SHUT_WR) elsewhere.
    /// <see cref="WinsockErrorAction.NotConnected"/> means the peer is already gone and there is nothing to close.
    /// </summary>
    public static WinsockErrorAction SendFin(Socket socket) => WinsockErrors.Classify(TrySendFin(socket));

    private static SocketError TrySendFin(Socket socket)
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
