using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;

namespace Transport.Winsock.Listener;

internal static class ListenSocket
{
    /// <summary>
    /// Makes the listening socket with <see cref="WinsockTransportOptions.CreateBoundListenSocket"/>, sets
    /// TCP_NODELAY on it for accepted sockets to inherit, and starts listening. A busy address surfaces as
    /// Kestrel's <see cref="AddressInUseException"/>; a socket the function should not have returned, as
    /// an error naming the option.
    /// </summary>
    public static Socket Create(IPEndPoint endPoint, WinsockTransportOptions options)
    {
        Socket? socket;
        try
        {
            socket = options.CreateBoundListenSocket(endPoint);
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            throw new AddressInUseException(ex.Message, ex);
        }

        if (socket is null || socket.SocketType != SocketType.Stream || socket.ProtocolType != ProtocolType.Tcp || !socket.IsBound)
        {
            var what = socket is null ? "null" : $"a {(socket.IsBound ? "bound" : "unbound")} {socket.SocketType} {socket.ProtocolType} socket";
            socket?.Dispose();
            throw new InvalidOperationException(
                $"{nameof(WinsockTransportOptions)}.{nameof(WinsockTransportOptions.CreateBoundListenSocket)} must return a bound TCP stream socket for {endPoint}; it returned {what}.");
        }

        try
        {
            socket.NoDelay = options.NoDelay;
            socket.Listen(options.Backlog);
            return socket;
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            socket.Dispose();
            throw new AddressInUseException(ex.Message, ex);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
