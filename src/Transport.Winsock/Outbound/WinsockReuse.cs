using System.Net;
using System.Net.Http;
using Transport.Winsock.Outbound;

namespace Transport.Winsock;

/// <summary>Ways into the outbound side for clients that are not written against <see cref="Microsoft.AspNetCore.Connections.IConnectionFactory"/>.</summary>
public static class WinsockReuse
{
    /// <summary>
    /// A <see cref="SocketsHttpHandler.ConnectCallback"/> whose connections come from
    /// <paramref name="factory"/>, so HttpClient (and YARP and gRPC clients on a SocketsHttpHandler) run on
    /// them: <c>handler.ConnectCallback = WinsockReuse.CreateConnectCallback(factory)</c>. The handler's own
    /// ConnectTimeout and cancellation apply, with the handler's own exceptions; a refused or unreachable
    /// connect surfaces as with the handler's own connect (an <see cref="HttpRequestException"/> around the
    /// <see cref="System.Net.Sockets.SocketException"/>). Leave <see cref="WinsockOutboundOptions.ConnectTimeout"/>
    /// infinite here and set the handler's: the factory's own fails with a SocketException (TimedOut),
    /// which HttpClient reports as a connection error rather than as its timeout.
    /// The stream's Dispose ends the connection gracefully. The factory stays the caller's to dispose.
    /// </summary>
    public static Func<SocketsHttpConnectionContext, CancellationToken, ValueTask<Stream>> CreateConnectCallback(WinsockOutboundConnectionFactory factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        return async (context, cancellationToken) =>
        {
            var connection = await factory.ConnectForStreamAsync(context.DnsEndPoint, cancellationToken).ConfigureAwait(false);
            return new ConnectionStream(connection);
        };
    }

    /// <summary>
    /// <see cref="CreateConnectCallback(WinsockOutboundConnectionFactory)"/> on a factory of its own, made
    /// with <paramref name="options"/> (checked now), that lives as long as the process, as a handler's
    /// connection pool usually does: call it once per handler that lives as long, not per request or per
    /// rotated handler (IHttpClientFactory), or use the overload with a factory of your own.
    /// </summary>
    public static Func<SocketsHttpConnectionContext, CancellationToken, ValueTask<Stream>> CreateConnectCallback(WinsockOutboundOptions? options = null)
        => CreateConnectCallback(new WinsockOutboundConnectionFactory(options));
}
