using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Transport.Benchmarks.Shared;
using Transport.Winsock;

namespace Transport.Benchmarks;

/// <summary>
/// A listener bound the way Kestrel binds one: the services of a host with <c>UseKestrel()</c>, plus
/// <c>AddWinsockReuseTransport()</c> or not, so both transports share Kestrel's registrations (memory
/// pool factory, options, logging), from <see cref="KestrelTransportHost"/>, shared with TransportBench.
/// </summary>
internal sealed class KestrelTransport : IAsyncDisposable
{
    private readonly IHost _host;

    private KestrelTransport(IHost host, IConnectionListener listener)
    {
        _host = host;
        Listener = listener;
    }

    public IConnectionListener Listener { get; }

    public IPEndPoint EndPoint => (IPEndPoint)Listener.EndPoint;

    /// <summary>The Winsock transport's counters; null for Kestrel's Sockets transport.</summary>
    public WinsockTransportCounters? WinsockCounters => _host.Services.GetService<WinsockTransportCounters>();

    /// <summary>Binds 127.0.0.1 on an ephemeral port with the Winsock transport or Kestrel's Sockets transport.</summary>
    public static async Task<KestrelTransport> BindAsync(bool winsock)
    {
        var endPoint = new IPEndPoint(IPAddress.Loopback, 0);
        var (host, factory) = KestrelTransportHost.Create(winsock, endPoint);
        try
        {
            var listener = await factory.BindAsync(endPoint).ConfigureAwait(false);
            return new KestrelTransport(host, listener);
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Listener.UnbindAsync().ConfigureAwait(false);
        await Listener.DisposeAsync().ConfigureAwait(false);
        await KestrelTransportHost.DisposeAsync(_host).ConfigureAwait(false);
    }
}
